//! A safe reader of PyTorch checkpoints (`torch.save` zip archives). The
//! pickle is *parsed*, never executed: we interpret the opcodes into a value
//! tree, recognise the few globals that build tensors and ordered dicts, and
//! keep every other global as an inert name.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use half::{bf16, f16};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl DType {
    fn from_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 | DType::I64 => 8,
            DType::U8 | DType::Bool => 1,
        }
    }
}

/// A tensor record: where its elements live in the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: DType,
    /// Offset in elements into the storage.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A parsed pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Tensor(TensorRef),
    /// A global we do not interpret (kept by name, never called).
    Global(String),
    /// The result of calling an uninterpreted global.
    Object(String, Vec<Value>),
    /// An object whose state was set by BUILD: a TorchScript module, with
    /// its attributes (parameters, buffers, submodules) in `state`.
    Module { class: String, state: Box<Value> },
    /// A persistent id (PyTorch's storage records).
    Persistent(Box<Value>),
    Mark,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        if let Value::Str(s) = self {
            Some(s)
        } else {
            None
        }
    }

    /// Looks a string key up in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("{path}: not a PyTorch zip checkpoint ({reason})")]
    NotACheckpoint { path: String, reason: String },
    #[error("{path}: pickle data is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: unsupported pickle feature: {reason}")]
    Unsupported { path: String, reason: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

/// An opened `.pth` archive: its parsed object and raw storages.
pub struct Checkpoint {
    pub path: String,
    pub root: Value,
    archive: zip::ZipArchive<std::fs::File>,
    /// Archive folder prefix (e.g. `consolidated/`).
    prefix: String,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Checkpoint, PickleError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| PickleError::Io { path: name.clone(), reason: e.to_string() })?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| PickleError::NotACheckpoint {
            path: name.clone(),
            reason: format!("{e}; legacy (pre-1.6) and TorchScript-only files are not supported, re-save with torch.save"),
        })?;
        let pkl = (0..archive.len())
            .filter_map(|i| archive.by_index(i).ok().map(|f| f.name().to_string()))
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
            .ok_or_else(|| PickleError::NotACheckpoint { path: name.clone(), reason: "no */data.pkl in the archive".into() })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let mut bytes = Vec::new();
        archive
            .by_name(&pkl)
            .and_then(|mut f| f.read_to_end(&mut bytes).map_err(zip::result::ZipError::Io))
            .map_err(|e| PickleError::Io { path: name.clone(), reason: e.to_string() })?;
        let root = Unpickler::new(&bytes, &name).run()?;
        Ok(Checkpoint { path: name, root, archive, prefix })
    }

    /// The elements of a tensor, converted to f32 and made contiguous.
    pub fn read_f32(&mut self, t: &TensorRef) -> Result<Vec<f32>, PickleError> {
        let entry = format!("{}data/{}", self.prefix, t.storage);
        let mut raw = Vec::new();
        self.archive
            .by_name(&entry)
            .and_then(|mut f| f.read_to_end(&mut raw).map_err(zip::result::ZipError::Io))
            .map_err(|e| PickleError::Io { path: self.path.clone(), reason: format!("storage {entry}: {e}") })?;
        let size = t.dtype.size();
        let count: usize = t.shape.iter().product();
        // Element offsets of a strided view, in row-major order of `shape`.
        let mut out = Vec::with_capacity(count);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..count {
            let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            let bytes = raw.get(at * size..(at + 1) * size).ok_or_else(|| PickleError::Corrupt {
                path: self.path.clone(),
                reason: format!("storage {} is shorter than its tensor view", t.storage),
            })?;
            out.push(match t.dtype {
                DType::F32 => f32::from_le_bytes(bytes.try_into().unwrap()),
                DType::F16 => f16::from_le_bytes(bytes.try_into().unwrap()).to_f32(),
                DType::BF16 => bf16::from_le_bytes(bytes.try_into().unwrap()).to_f32(),
                DType::F64 => f64::from_le_bytes(bytes.try_into().unwrap()) as f32,
                DType::I64 => i64::from_le_bytes(bytes.try_into().unwrap()) as f32,
                DType::I32 => i32::from_le_bytes(bytes.try_into().unwrap()) as f32,
                DType::U8 | DType::Bool => bytes[0] as f32,
            });
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }

    /// The state dict: the root dict, or its `model` / `state_dict` entry, or
    /// the parameters of a TorchScript module tree (OpenAI's released CLIP
    /// files), named by their attribute paths as `state_dict()` would.
    /// Non-tensor entries (OpenAI CLIP holds a few integers) are skipped.
    pub fn tensors(&self) -> HashMap<String, TensorRef> {
        let dict = ["model", "state_dict"].iter().find_map(|k| self.root.get(k)).unwrap_or(&self.root);
        let mut out = HashMap::new();
        collect_tensors(dict, "", &mut out);
        out
    }
}

fn collect_tensors(value: &Value, prefix: &str, out: &mut HashMap<String, TensorRef>) {
    match value {
        Value::Module { state, .. } => collect_tensors(state, prefix, out),
        Value::Dict(items) => {
            for (k, v) in items {
                let Some(name) = k.as_str() else { continue };
                match v {
                    Value::Tensor(t) => {
                        out.insert(format!("{prefix}{name}"), t.clone());
                    }
                    // Only module trees nest; a plain state dict is flat.
                    Value::Module { .. } => collect_tensors(v, &format!("{prefix}{name}."), out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    path: &'a str,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], path: &'a str) -> Self {
        Unpickler { data, pos: 0, stack: Vec::new(), memo: HashMap::new(), path }
    }

    fn corrupt(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Corrupt { path: self.path.to_string(), reason: format!("{} (at byte {})", reason.into(), self.pos) }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| self.corrupt("truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let start = self.pos;
        while self.u8()? != b'\n' {}
        Ok(String::from_utf8_lossy(&self.data[start..self.pos - 1]).into_owned())
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("invalid UTF-8 string"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| self.corrupt("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let at = self.stack.iter().rposition(|v| *v == Value::Mark).ok_or_else(|| self.corrupt("no MARK"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let pos = self.pos;
        let path = self.path.to_string();
        self.stack.last_mut().ok_or(PickleError::Corrupt { path, reason: format!("empty stack (at byte {pos})") })
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(PickleError::Unsupported { path: self.path.into(), reason: "integer over 64 bits".into() });
                    }
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s))
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo.get(&i).cloned().ok_or_else(|| self.corrupt("memo miss"))?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo.get(&i).cloned().ok_or_else(|| self.corrupt("memo miss"))?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(format!("{m}.{n}"))),
                        _ => return Err(self.corrupt("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Persistent(Box::new(pid)))
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85 => {
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a]))
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a, b]))
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(vec![a, b, c]))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.corrupt("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.corrupt("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.corrupt("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.corrupt("odd SETITEMS"));
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err(self.corrupt("SETITEMS on a non-dict")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), kept inert.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let name = if let Value::Global(n) = cls { n } else { "?".into() };
                    let args = if let Value::Tuple(a) = args { a } else { vec![args] };
                    self.stack.push(Value::Object(name, args))
                }
                b'b' => {
                    // BUILD: state applied to an object. TorchScript modules
                    // keep it (their attributes); other states (an
                    // OrderedDict's _metadata, a parameter's flags) are dropped.
                    let state = self.pop()?;
                    let top = self.top()?;
                    if let Value::Object(class, _) = top {
                        *top = Value::Module { class: class.clone(), state: Box::new(state) };
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                _ => {
                    return Err(PickleError::Unsupported { path: self.path.into(), reason: format!("opcode 0x{op:02x} at byte {}", self.pos - 1) })
                }
            }
        }
    }

    /// Calls of the few globals that matter; every other call stays inert.
    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let name = match callable {
            Value::Global(n) => n,
            other => return Ok(Value::Object(format!("{other:?}"), vec![args])),
        };
        let args = match args {
            Value::Tuple(a) => a,
            other => vec![other],
        };
        match name.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let storage = match args.first() {
                    Some(Value::Persistent(pid)) => pid.as_ref().clone(),
                    _ => return Err(self.corrupt("tensor without a storage record")),
                };
                let (dtype, key) = match &storage {
                    Value::Tuple(t) if t.len() >= 3 => {
                        let dtype = match &t[1] {
                            Value::Global(g) => DType::from_storage(g.rsplit('.').next().unwrap_or(""))
                                .ok_or_else(|| PickleError::Unsupported { path: self.path.into(), reason: format!("storage type {g}") })?,
                            _ => return Err(self.corrupt("storage record without a type")),
                        };
                        let key = match &t[2] {
                            Value::Str(s) => s.clone(),
                            _ => return Err(self.corrupt("storage record without a key")),
                        };
                        (dtype, key)
                    }
                    _ => return Err(self.corrupt("malformed storage record")),
                };
                let ints = |v: Option<&Value>| -> Result<Vec<usize>, PickleError> {
                    match v {
                        Some(Value::Tuple(items)) => items
                            .iter()
                            .map(|i| match i {
                                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                                _ => Err(self.corrupt("bad tensor size/stride")),
                            })
                            .collect(),
                        _ => Err(self.corrupt("tensor size/stride is not a tuple")),
                    }
                };
                let offset = match args.get(1) {
                    Some(Value::Int(n)) if *n >= 0 => *n as usize,
                    _ => return Err(self.corrupt("bad tensor offset")),
                };
                Ok(Value::Tensor(TensorRef { storage: key, dtype, offset, shape: ints(args.get(2))?, stride: ints(args.get(3))? }))
            }
            "torch._utils._rebuild_parameter" => Ok(args.into_iter().next().unwrap_or(Value::None)),
            _ => Ok(Value::Object(name, args)),
        }
    }
}
