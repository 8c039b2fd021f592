"""The daemon as a service: its configuration (``config``, applied again at a reload by
``config_reload``), systemd unit (``unit``) and what systemd holds or is told
(``activation``), and what admins watch it with: the audit log (``audit``),
metrics (``metrics``) and the status (``status``).

The audit log and metrics are dispatcher hooks (``hook(outcome)`` on the
request's thread, before the caller is answered), so each one only queues or
counts there and leaves files to a writer thread of its own.
"""
