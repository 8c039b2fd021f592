"""Services beside the dispatcher: the audit log and the metrics file.

Both are dispatcher hooks (``hook(outcome)`` on the request's thread, before
the caller is answered), so each one only queues or counts there and leaves
files to a writer thread of its own.
"""
