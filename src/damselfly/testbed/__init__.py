"""Tools to measure Damselfly for real on one machine: an origin HTTP server that
counts what it serves, a registry, hosts in network namespaces with shaped links,
scenarios, the fluid bound, load generators and reports. Starting and stopping
the processes is the product's own (:mod:`damselfly.runtime`), which the
testbed uses; the testbed never imports the CLI."""
