"""The daemon as a service: its configuration, systemd unit, audit log and metrics."""
