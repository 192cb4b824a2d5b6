"""HTTP layer of the kernel: middleware, rendering, auth pages, admin pages, ops endpoints."""
