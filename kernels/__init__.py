"""fastgan's Triton kernels, one module per op family (installed as ``fastgan.kernels``).

Importing this package imports ``triton``; fastgan itself only does so on the first call
that runs on the triton backend.
"""
