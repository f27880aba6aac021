"""Tables of test cases and small models shared by several test modules (one place for them, so that no test
module imports another)."""
