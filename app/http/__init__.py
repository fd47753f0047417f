"""HTTP plumbing shared by the command gateway and the query API: errors, body limits, metrics."""
