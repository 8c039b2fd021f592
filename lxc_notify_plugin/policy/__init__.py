"""Policy: profiles parsed once into frozen dataclasses, and decisions over them.

Nothing here opens a file descriptor or talks to the kernel; every decision is a
plain function from a request to a verdict, testable from a table.
"""
