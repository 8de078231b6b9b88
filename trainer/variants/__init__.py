"""Model variants: one module per variant (its model builder, KL schedule, step and settings)
and their registry (`trainer.variants.registry.VARIANTS`). Pure core: no Ray."""
