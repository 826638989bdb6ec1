"""The discrete-event simulator: drives engine-model replicas and a policy over a workload."""
