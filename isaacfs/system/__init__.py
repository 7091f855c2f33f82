"""The host: mount table and stale mounts, log paths, sd_notify, the systemd unit, Isaac Lab."""
