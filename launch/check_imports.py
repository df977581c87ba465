#!/usr/bin/env python3
"""Fails when two of the trainer's modules import each other, directly or around a loop
(`crate::`, `super::` and `use crate::{...}` paths, test modules excluded). Features plug
into the loop through traits (TrainHook, EmbeddingLayer) so that no such loop is needed.

    python3 launch/check_imports.py [trainer/src]
"""
import re,os,glob
import sys
root=sys.argv[1] if len(sys.argv)>1 else 'trainer/src'
mods={}
def name_of(rel):
    parts=rel[:-3].split('/')
    if parts[-1]=='mod': parts=parts[:-1]
    return '::'.join(parts)
names=set()
files={}
for f in glob.glob(root+'/**/*.rs',recursive=True):
    rel=os.path.relpath(f,root)
    if rel.startswith('bin/') or rel=='lib.rs': continue
    n=name_of(rel); names.add(n); files[n]=f
# a parent module's `pub use child::Item` re-exports: a path through the parent to such
# an item is an import of the child
reexports={}
roots={'': os.path.join(root,'lib.rs')} if os.path.exists(os.path.join(root,'lib.rs')) else {}
for n,f in list(files.items())+list(roots.items()):
    if not (f.endswith('mod.rs') or f.endswith('lib.rs')): continue
    text=open(f).read()
    for child,items in re.findall(r'pub use ([a-z_]+)::\{?([^;}]*)\}?;',text):
        for item in items.split(','):
            item=item.strip().split(' as ')[-1].strip()
            if item: reexports[(n,item)]=(n+'::'+child) if n else child
def resolve(path):
    # longest module prefix, then through re-exports
    segs=path.split('::')
    if segs[0] not in names and ('',segs[0]) in reexports:
        return reexports[('',segs[0])]
    for k in range(len(segs),0,-1):
        c='::'.join(segs[:k])
        if c in names:
            nxt=segs[k] if k<len(segs) else None
            while nxt and (c,nxt) in reexports:
                c=reexports[(c,nxt)]
            return c
    return None
for n,f in files.items():
    s=open(f).read()
    i=s.find('#[cfg(test)]')
    if i>=0: s=s[:i]
    # comments name modules without importing them
    s=re.sub(r'//.*', '', s)
    refs=set()
    for m in re.findall(r'crate::([A-Za-z_0-9:]+)',s):
        r=resolve(m.strip(':'))
        if r: refs.add(r)
    for base,grp in re.findall(r'use crate::([a-z_:]*)\{([^}]*)\}',s):
        for item in grp.split(','):
            item=item.strip()
            r=resolve((base+item).strip(':'))
            if r: refs.add(r)
    # super:: refs
    for m in re.findall(r'super::([A-Za-z_0-9:]+)',s):
        parent='::'.join(n.split('::')[:-1]) if not f.endswith('mod.rs') else '::'.join(n.split('::')[:-1])
        r=resolve(((parent+'::') if parent else '')+m.strip(':'))
        if r: refs.add(r)
    refs.discard(n)
    mods[n]=refs
def cycles():
    res=set()
    for a in mods:
        stack=[(a,[a])]
        while stack:
            x,path=stack.pop()
            for m in mods.get(x,()):
                if m==a and len(path)>1: res.add(tuple(path))
                elif m not in path and len(path)<6: stack.append((m,path+[m]))
    canon=set()
    for c in res:
        i=c.index(min(c)); canon.add(c[i:]+c[:i])
    return canon
found=sorted(cycles(), key=len)
for c in found:
    print('import cycle: ' + ' -> '.join(c + (c[0],)))
sys.exit(1 if found else 0)
