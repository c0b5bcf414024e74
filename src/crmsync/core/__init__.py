"""Pure decisions: no I/O, no database, no protocol code. Everything here is unit-testable."""
