"""The local stack and its processes: dev server, sandbox, worker and gateway on one machine.

`process` supervises child processes for the stack, the benchmarks and the tests alike;
`stack` and `run` are the embedded stack (`python -m devstack`, `python -m starter dev`);
`demo` plays calls through it.
"""
