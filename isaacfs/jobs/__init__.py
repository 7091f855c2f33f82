"""Jobs: warm (spec, plan, run), the USD closure, verify, reports, and the workspace a job
runs in (a daemon's, or one built on an unmounted mirror)."""
