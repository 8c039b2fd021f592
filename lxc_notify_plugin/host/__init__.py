"""Host views: what the host knows about devices (udev) and tasks (cgroups), read once and kept."""
