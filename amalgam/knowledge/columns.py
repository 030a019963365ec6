"""Rows of a memory-mapped Arrow column of fixed-size lists, read as numpy arrays.

The knowledge cache stores each tap as a column of fixed-size float16 lists, one record batch per write. Reading a
batch of rows through ``datasets`` formatting costs several milliseconds per tap (it builds the rows one by one),
a tenth of a small student's whole training step; here each record batch is a zero-copy numpy view of the mapped
file, ``rows x width``, and a batch of rows is one fancy index per record batch it touches (the pages are read
from disk as they are touched, as before).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class MappedColumn:
    """A ``pyarrow`` column of fixed-size lists (no nulls) as ``rows x width`` numpy views, one per chunk.

    Example:
        >>> import pyarrow as pa
        >>> lists = lambda values: pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float16()), 2)
        >>> column = MappedColumn(pa.chunked_array([lists([0, 1, 2, 3]), lists([4, 5])]))
        >>> column.take(np.array([2, 0, 2])).tolist()
        [[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]]
    """

    def __init__(self, column: pa.ChunkedArray) -> None:
        if not pa.types.is_fixed_size_list(column.type):
            raise TypeError(f"MappedColumn reads fixed-size list columns, got {column.type}")
        if column.null_count:
            raise ValueError("MappedColumn reads columns without nulls")
        self.width = column.type.list_size
        self.dtype = column.type.value_type.to_pandas_dtype()
        # flatten() honours each chunk's slice offset; to_numpy(zero_copy_only) refuses to copy
        self.chunks = [chunk.flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), self.width)
                       for chunk in column.chunks if len(chunk)]
        self.starts = np.cumsum([0] + [len(chunk) for chunk in self.chunks])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows, in their order, as a new ``len(rows) x width`` array."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must be in 0..{len(self) - 1}, got {rows.min()}..{rows.max()}")
        if len(self.chunks) == 1:
            return self.chunks[0][rows]
        out = np.empty((len(rows), self.width), dtype=self.dtype)
        chunk_of = np.searchsorted(self.starts, rows, side="right") - 1
        for chunk in np.unique(chunk_of):
            picked = chunk_of == chunk
            out[picked] = self.chunks[chunk][rows[picked] - self.starts[chunk]]
        return out
