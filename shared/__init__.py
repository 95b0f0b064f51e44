"""The patch-management domain and its Azure adapters. Free of the Functions runtime."""
