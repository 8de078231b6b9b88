"""Process-level runtime settings."""

from __future__ import annotations

import platform

import pytest

from trainer.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is a glibc interface")
def test_glibc_accepts_the_malloc_settings_and_calls_repeat():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent: entry points may each call it
