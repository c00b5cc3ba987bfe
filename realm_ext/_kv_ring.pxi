# KV ring and attention wrappers (included by _kernels.pyx).
