"""The daemon as a service: its configuration (``config``), systemd unit (``unit``),
and what admins watch it with, the audit log (``audit``) and metrics (``metrics``).

The audit log and metrics are dispatcher hooks (``hook(outcome)`` on the
request's thread, before the caller is answered), so each one only queues or
counts there and leaves files to a writer thread of its own.
"""
