"""Protocol endpoints, framework-free: plain values in, plain values out, spec errors raised."""
