"""Not the product's core: throw-away containers for the demo, the tests and the benchmarks."""
