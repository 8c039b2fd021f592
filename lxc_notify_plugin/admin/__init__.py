"""The admin backend: what `lxc-notify` commands do to an LXC container's config
(``lxc_config``) and how they reach the running daemon (``daemon``)."""
