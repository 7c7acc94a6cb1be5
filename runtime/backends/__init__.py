"""Backends: a loader + a runner each (ort, torch); optional dependencies are imported lazily."""
