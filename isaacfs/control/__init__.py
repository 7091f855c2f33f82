"""Control: the daemon's Unix socket server, its client, and the commands it answers."""
