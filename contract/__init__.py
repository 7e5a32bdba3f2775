"""What the Pulumi program and ``portalctl`` agree on, free of Pulumi: the stack config model,
object names and labels, network ports, the migration Job, the PromQL selectors and the alert
rules. Both ``components`` and ``rollout`` build on it; it imports neither."""
