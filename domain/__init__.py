"""Pure domain code: aggregates, business rules and events. No I/O, so it tests in microseconds."""
