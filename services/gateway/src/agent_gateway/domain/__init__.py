"""Domain: errors and authentication, free of I/O and web frameworks."""
