"""Patches candle-core's src/backprop.rs so a gradient is stored as is when it is the first.

Upstream accumulates every gradient as `let g = grads.or_insert(arg)?; *g = g.add(&x)?;`, where
`or_insert` allocates `zeros_like(arg)`: each node of the graph costs a memset and a full add even
when it has one consumer (almost all of them). This rewrites each such pair to
`grads.accumulate(arg, &x)?;`, and adds `GradStore::accumulate`, which inserts `x` (made contiguous,
as zeros + add always left it) when there is no gradient yet and adds otherwise. Pairs that
subtract, scatter or assign stay as they are. Usage: patch_candle_backprop.py PATH/backprop.rs
"""

import re
import sys

ACCUMULATE = '''    /// Adds `grad` to the gradient of `tensor`, storing it as is when there is none yet.
    ///
    /// Patched in cifar-stream (tools/patch_candle_backprop.py): upstream starts each gradient
    /// from `zeros_like` and adds to it, a memset and a full add per node.
    pub fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        use std::collections::hash_map::Entry;
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut e) => {
                let sum = e.get().add(grad)?;
                e.insert(sum);
            }
            Entry::Vacant(e) => {
                if grad.shape() != tensor.shape() || grad.dtype() != tensor.dtype() {
                    crate::bail!(
                        "gradient {:?} {:?} does not match its tensor {:?} {:?}",
                        grad.shape(),
                        grad.dtype(),
                        tensor.shape(),
                        tensor.dtype()
                    )
                }
                // zeros + add always yielded a contiguous gradient; scatter_add relies on it.
                e.insert(grad.contiguous()?);
            }
        }
        Ok(())
    }

'''
ANCHOR = '    /// Get the gradient tensor associated with the given tensor, or, if it does not exist,'
START = re.compile(r'^(\s*)let (\w+) = grads\.or_insert\(([\w\.]+)\)\?;\s*$')


def patch(text):
    lines = text.split('\n')
    out, i, n = [], 0, 0
    while i < len(lines):
        m = START.match(lines[i])
        if m:
            _, var, arg = m.groups()
            add = re.compile(r'^(\s*)\*' + var + r' = ' + var + r'\.add\((.*)\)\?;?\s*$')
            between, j = [], i + 1
            while j < len(lines) and j < i + 6:
                am = add.match(lines[j])
                if am:
                    expr = am.group(2).replace(var + '.dims()', arg + '.dims()')
                    if var not in expr:
                        out.extend(between)
                        out.append(f'{am.group(1)}grads.accumulate({arg}, {expr})?;')
                        n += 1
                        i = j + 1
                    break
                if var in lines[j] or lines[j].strip().startswith('}'):
                    break
                between.append(lines[j])
                j += 1
            if i == j + 1:
                continue
        out.append(lines[i])
        i += 1
    text = '\n'.join(out)
    if ANCHOR not in text:
        sys.exit('backprop.rs: GradStore::or_insert doc comment not found (upstream changed?)')
    return text.replace(ANCHOR, ACCUMULATE + ANCHOR, 1), n


if __name__ == '__main__':
    path = sys.argv[1]
    text, n = patch(open(path).read())
    if n < 40:
        sys.exit(f'backprop.rs: only {n} accumulations rewritten (expected about 50): upstream changed?')
    open(path, 'w').write(text)
    print(f'backprop.rs: {n} accumulations rewritten', file=sys.stderr)
