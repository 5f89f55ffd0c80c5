"""Aggregated match kernels (ASMK, ASMK*, VLAD as a kernel): the kernel math and the inverted file over an index."""
