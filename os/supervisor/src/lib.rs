//! Supervises long-running services: ordering, readiness, restarts, cgroups, logs.
