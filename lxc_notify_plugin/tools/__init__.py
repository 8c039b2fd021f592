"""Not the product's core: the throw-away LXC containers of ``lxc-notify demo``.

The tests and benchmarks use them too; what only tests use (the OCI tier's
bundles) lives under ``tests/``, so the package ships nothing of it.
"""
