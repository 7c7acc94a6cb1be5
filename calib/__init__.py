"""INT8 calibration: explicit Q/DQ graphs from real propagation data (work in progress)."""
