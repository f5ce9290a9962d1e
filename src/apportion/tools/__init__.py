"""Tools the strategies can call: a safe symbolic math solver."""
