//! One module per supervised component: its configuration, ordering and readiness probe.
