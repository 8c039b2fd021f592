"""Acting inside a container as the calling task would.

* ``task``: what we know about the caller and its container (id maps, its
  credentials from ``/proc/TID/status``, pids in its namespace), read once
  per request or once per container; no identity changes.
* ``thread``: a supervisor thread that borrows the caller's root, start
  directory, credentials, capabilities and umask for one step, and its
  mount namespace for another, each undone when the step ends.
* ``userns``: a helper process that lives in the container's user
  namespace, for steps where the kernel itself must apply that namespace's
  rules (a path walk with exactly the caller's rights).
"""
