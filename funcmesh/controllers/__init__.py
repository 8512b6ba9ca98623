"""Controllers: reconcile desired state (stored objects) into running state (pools, builds)."""
