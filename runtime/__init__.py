"""Torch-free propagation runtime. numpy is the only hard dependency; backends load lazily."""
