#!/usr/bin/env python3
"""Criteo TSV (label, I1..I13, C1..C26) to Parquet with pyarrow, as NVTabular and
TorchRec's preprocessing hold it: the label int32, dense columns int64 (missing = null),
categorical columns int64 from their hexadecimal text (missing = null).

    usage: criteo_to_parquet.py IN.tsv OUT.parquet [ROW_GROUP_ROWS]
"""
import sys

import pyarrow as pa
import pyarrow.csv as pc
import pyarrow.parquet as pq


def main(src, out, row_group):
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    types = {"label": pa.int32(), **{f"I{i}": pa.int64() for i in range(1, 14)}}
    types.update({f"C{i}": pa.string() for i in range(1, 27)})
    table = pc.read_csv(
        src,
        read_options=pc.ReadOptions(column_names=names, block_size=1 << 26),
        parse_options=pc.ParseOptions(delimiter="\t"),
        convert_options=pc.ConvertOptions(column_types=types, strings_can_be_null=True),
    )
    columns = {}
    for name in names:
        column = table[name]
        if name.startswith("C"):
            chunks = [
                pa.array([None if v is None else int(v, 16) for v in chunk.to_pylist()], pa.int64())
                for chunk in column.chunks
            ]
            column = pa.chunked_array(chunks, pa.int64())
        columns[name] = column
    pq.write_table(pa.table(columns), out, row_group_size=row_group)
    print(f"{out}: {table.num_rows} rows")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 131072)
