//! A safe reader of PyTorch checkpoints (`torch.save` zip archives). The
//! pickle is *parsed*, never executed: we interpret the opcodes into a value
//! tree, recognise the few globals that build tensors and ordered dicts, and
//! keep every other global as an inert name.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use half::{bf16, f16};

use crate::limits::{
    MAX_NAME_BYTES, MAX_PICKLE_BYTES, MAX_PICKLE_DEPTH, MAX_PICKLE_MEMO, MAX_PICKLE_STRING_BYTES, MAX_PICKLE_VALUE_BYTES, MAX_TENSORS, MAX_TENSOR_ELEMENTS,
    MAX_TENSOR_RANK, MAX_ZIP_ENTRIES,
};

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
    /// A resource bound of [`crate::limits`] was exceeded (`field` names it).
    #[error("{path}: {field}: {reason}")]
    Limit { path: String, field: &'static str, reason: String },
    /// A tensor record whose shape, strides or offset do not fit its storage,
    /// or are not the contiguous layout we read.
    #[error("{path}: tensor record (storage {storage}): {field}: {reason}")]
    BadTensor { path: String, storage: String, field: &'static str, reason: String },
}

/// What a checkpoint is read from: a file, or bytes in memory (the fuzzer, tests).
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// An opened `.pth` archive: its parsed object and raw storages.
pub struct Checkpoint {
    pub path: String,
    pub root: Value,
    archive: zip::ZipArchive<Box<dyn ReadSeek>>,
    /// Archive folder prefix (e.g. `consolidated/`).
    prefix: String,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Checkpoint, PickleError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| PickleError::Io { path: name.clone(), reason: e.to_string() })?;
        Self::from_reader(&name, Box::new(std::io::BufReader::new(file)))
    }

    /// A checkpoint held in memory; `name` is used in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Checkpoint, PickleError> {
        Self::from_reader(name, Box::new(std::io::Cursor::new(bytes)))
    }

    /// Reads the archive's directory and parses its `*/data.pkl` (the
    /// `torch.save` layout, and TorchScript's `archive/data.pkl` with its
    /// `constants.pkl` and `code/` beside it). Storages are read on demand.
    pub fn from_reader(name: &str, reader: Box<dyn ReadSeek>) -> Result<Checkpoint, PickleError> {
        let name = name.to_string();
        let mut archive = zip::ZipArchive::new(reader).map_err(|e| PickleError::NotACheckpoint {
            path: name.clone(),
            reason: format!("{e}; legacy (pre-1.6) and TorchScript-only files are not supported, re-save with torch.save"),
        })?;
        if archive.len() > MAX_ZIP_ENTRIES {
            return Err(PickleError::Limit { path: name, field: "zip entries", reason: format!("{} entries; a checkpoint has at most {MAX_ZIP_ENTRIES}", archive.len()) });
        }
        // The names come from the central directory: no entry is opened to find data.pkl.
        let pkl = archive
            .file_names()
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .min()
            .map(str::to_string)
            .ok_or_else(|| PickleError::NotACheckpoint { path: name.clone(), reason: "no */data.pkl in the archive".into() })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let bytes = {
            let io = |e: zip::result::ZipError| PickleError::Io { path: name.clone(), reason: format!("{pkl}: {e}") };
            let f = archive.by_name(&pkl).map_err(io)?;
            if f.size() > MAX_PICKLE_BYTES {
                return Err(PickleError::Limit { path: name, field: "data.pkl size", reason: format!("{} bytes; the pickle is at most {MAX_PICKLE_BYTES}", f.size()) });
            }
            // The size in the directory may lie (a deflate bomb): read at most one byte past the bound.
            let mut bytes = Vec::with_capacity(f.size() as usize);
            f.take(MAX_PICKLE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io(zip::result::ZipError::Io(e)))?;
            if bytes.len() as u64 > MAX_PICKLE_BYTES {
                return Err(PickleError::Limit { path: name, field: "data.pkl size", reason: format!("over {MAX_PICKLE_BYTES} bytes once inflated") });
            }
            bytes
        };
        let root = Unpickler::new(&bytes, &name).run()?;
        Ok(Checkpoint { path: name, root, archive, prefix })
    }

    /// The elements of a tensor, converted to f32. The record was checked when
    /// it was parsed (contiguous strides, at most [`MAX_TENSOR_ELEMENTS`]
    /// elements, inside its storage's `numel`); here the storage entry must
    /// hold the view's bytes. Only those bytes are read, in chunks, and the
    /// output grows as they arrive, so a directory that lies about an entry's
    /// size cannot make us allocate more than the data we actually got.
    pub fn read_f32(&mut self, t: &TensorRef) -> Result<Vec<f32>, PickleError> {
        let bad = |field: &'static str, reason: String| PickleError::BadTensor { path: self.path.clone(), storage: t.storage.clone(), field, reason };
        t.check().map_err(|(field, reason)| bad(field, reason))?;
        let entry = format!("{}data/{}", self.prefix, t.storage);
        let size = t.dtype.size() as u64;
        let count = t.numel() as u64; // at most MAX_TENSOR_ELEMENTS: check() above
        let (start, len) = (t.offset as u64 * size, count * size);
        let path = self.path.clone();
        let io = |e: String| PickleError::Io { path: path.clone(), reason: format!("storage {entry}: {e}") };
        let f = self.archive.by_name(&entry).map_err(|e| io(e.to_string()))?;
        if f.size() < start + len {
            return Err(bad("offset", format!("the view needs bytes {start}..{} of its storage, which has {}", start + len, f.size())));
        }
        let mut f = f.take(start + len);
        std::io::copy(&mut (&mut f).take(start), &mut std::io::sink()).map_err(|e| io(e.to_string()))?;
        let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
        let mut chunk = vec![0u8; ((1 << 20) * size).min(len) as usize];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            f.read_exact(&mut chunk[..n]).map_err(|e| io(format!("{e} (the entry is shorter than its directory says)")))?;
            let bytes = &chunk[..n];
            match t.dtype {
                DType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
                DType::F16 => out.extend(bytes.chunks_exact(2).map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())),
                DType::BF16 => out.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f32())),
                DType::F64 => out.extend(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)),
                DType::I64 => out.extend(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)),
                DType::I32 => out.extend(bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)),
                DType::U8 | DType::Bool => out.extend(bytes.iter().map(|b| *b as f32)),
            }
            left -= n;
        }
        Ok(out)
    }

    /// The state dict: the root dict, or its `model` / `state_dict` entry, or
    /// the parameters of a TorchScript module tree (OpenAI's released CLIP
    /// files), named by their attribute paths as `state_dict()` would.
    /// Non-tensor entries (OpenAI CLIP holds a few integers) are skipped.
    ///
    /// At most [`MAX_TENSORS`] tensors, each named in at most [`MAX_NAME_BYTES`].
    pub fn tensors(&self) -> Result<HashMap<String, TensorRef>, PickleError> {
        let dict = ["model", "state_dict"].iter().find_map(|k| self.root.get(k)).unwrap_or(&self.root);
        let mut out = HashMap::new();
        collect_tensors(dict, "", &mut out, &self.path)?;
        Ok(out)
    }
}

fn collect_tensors(value: &Value, prefix: &str, out: &mut HashMap<String, TensorRef>, path: &str) -> Result<(), PickleError> {
    let limit = |field, reason| PickleError::Limit { path: path.into(), field, reason };
    match value {
        Value::Module { state, .. } => collect_tensors(state, prefix, out, path)?,
        Value::Dict(items) => {
            for (k, v) in items {
                let Some(name) = k.as_str() else { continue };
                if prefix.len() + name.len() > MAX_NAME_BYTES {
                    return Err(limit("tensor name", format!("a name of over {MAX_NAME_BYTES} bytes ({}...)", prefix.chars().take(64).collect::<String>())));
                }
                match v {
                    Value::Tensor(t) => {
                        out.insert(format!("{prefix}{name}"), t.clone());
                        if out.len() > MAX_TENSORS {
                            return Err(limit("tensors", format!("more than {MAX_TENSORS} tensors")));
                        }
                    }
                    // Only module trees nest (as deep as the pickle, at most MAX_PICKLE_DEPTH); a plain state dict is flat.
                    Value::Module { .. } => collect_tensors(v, &format!("{prefix}{name}."), out, path)?,
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

impl TensorRef {
    /// Elements of the view (the product of `shape`; [`TensorRef::check`] bounds it).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Checks the record on its own: rank, element count, strides that are
    /// the contiguous row-major layout of the shape (a dimension of size 1
    /// may have any stride, as in PyTorch's `is_contiguous`), and an offset
    /// that fits. Errors say which field is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.shape.len() > MAX_TENSOR_RANK {
            return Err(("size", format!("{} dimensions; at most {MAX_TENSOR_RANK}", self.shape.len())));
        }
        if self.stride.len() != self.shape.len() {
            return Err(("stride", format!("{} strides for {} dimensions", self.stride.len(), self.shape.len())));
        }
        let count = self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64).filter(|n| *n <= MAX_TENSOR_ELEMENTS));
        let Some(count) = count else {
            return Err(("size", format!("{:?} is over {MAX_TENSOR_ELEMENTS} elements", self.shape)));
        };
        if count > 0 {
            let mut want = 1u64;
            for (d, (&n, &s)) in self.shape.iter().zip(&self.stride).enumerate().rev() {
                if n != 1 && s as u64 != want {
                    return Err(("stride", format!("{:?} for size {:?} is not contiguous (dimension {d} needs stride {want}); re-save with .contiguous()", self.stride, self.shape)));
                }
                want *= n as u64;
            }
        }
        if (self.offset as u64).checked_add(count).is_none_or(|end| end > MAX_TENSOR_ELEMENTS * 8) {
            return Err(("storage_offset", format!("{} is past any storage this reader takes", self.offset)));
        }
        Ok(())
    }
}

/// A value on the stack or in the memo, with its nesting depth (a leaf is 0).
#[derive(Clone)]
struct Slot {
    value: Value,
    depth: usize,
}

/// Approximate heap bytes of a value and all it holds (what a deep copy costs).
fn value_bytes(v: &Value) -> usize {
    let node = std::mem::size_of::<Value>();
    node + match v {
        Value::Str(s) | Value::Global(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::List(items) | Value::Tuple(items) => items.iter().map(value_bytes).sum(),
        Value::Dict(items) => items.iter().map(|(k, v)| value_bytes(k) + value_bytes(v)).sum(),
        Value::Tensor(t) => t.storage.len() + 8 * (t.shape.len() + t.stride.len()),
        Value::Object(name, args) => name.len() + args.iter().map(value_bytes).sum::<usize>(),
        Value::Module { class, state } => class.len() + value_bytes(state),
        Value::Persistent(v) => value_bytes(v),
        Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Mark => 0,
    }
}

/// A short description of a value (for messages and inert object names),
/// never the whole tree.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Dict(_) => "dict",
        Value::Tensor(_) => "tensor",
        Value::Global(_) => "global",
        Value::Object(..) => "object",
        Value::Module { .. } => "module",
        Value::Persistent(_) => "persistent id",
        Value::Mark => "mark",
    }
}

/// Parses pickle opcodes into a value tree, within the bounds of
/// [`crate::limits`]: nesting depth, memo entries, string sizes, and the
/// bytes of values built in all (every copy a memo fetch makes counts).
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Slot>,
    path: &'a str,
    /// Bytes of values built so far (at most MAX_PICKLE_VALUE_BYTES).
    spent: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], path: &'a str) -> Self {
        Unpickler { data, pos: 0, stack: Vec::new(), memo: HashMap::new(), path, spent: 0 }
    }

    fn corrupt(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Corrupt { path: self.path.to_string(), reason: format!("{} (at byte {})", reason.into(), self.pos) }
    }

    fn limit(&self, field: &'static str, reason: String) -> PickleError {
        PickleError::Limit { path: self.path.to_string(), field, reason: format!("{reason} (at byte {})", self.pos) }
    }

    /// Charges `bytes` to the value budget.
    fn spend(&mut self, bytes: usize) -> Result<(), PickleError> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > MAX_PICKLE_VALUE_BYTES {
            return Err(self.limit("values", format!("the pickle builds more than {MAX_PICKLE_VALUE_BYTES} bytes of values")));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| self.corrupt("truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The bytes of a string or byte string of length `n` (bounded).
    fn take_string(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > MAX_PICKLE_STRING_BYTES {
            return Err(self.limit("string length", format!("a string of {n} bytes; at most {MAX_PICKLE_STRING_BYTES}")));
        }
        let b = self.take(n)?;
        self.spend(n)?;
        Ok(b)
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
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|b| *b == b'\n').ok_or_else(|| self.corrupt("truncated line"))?;
        let s = String::from_utf8_lossy(self.take_string(n)?).into_owned();
        self.pos += 1; // the newline
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take_string(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("invalid UTF-8 string"))
    }

    /// Pushes a value that holds values of at most `inner` depth (`None`: a leaf).
    fn push(&mut self, value: Value, inner: Option<usize>) -> Result<(), PickleError> {
        let depth = inner.map_or(0, |d| d + 1);
        if depth > MAX_PICKLE_DEPTH {
            return Err(self.limit("nesting depth", format!("values nest more than {MAX_PICKLE_DEPTH} deep")));
        }
        self.spend(std::mem::size_of::<Value>())?;
        self.stack.push(Slot { value, depth });
        Ok(())
    }

    fn push_slot(&mut self, slot: Slot) -> Result<(), PickleError> {
        self.spend(std::mem::size_of::<Value>())?;
        self.stack.push(slot);
        Ok(())
    }

    fn pop(&mut self) -> Result<Slot, PickleError> {
        self.stack.pop().ok_or_else(|| self.corrupt("stack underflow"))
    }

    /// The items above the topmost MARK, and the deepest of them.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, Option<usize>), PickleError> {
        let at = self.stack.iter().rposition(|v| v.value == Value::Mark).ok_or_else(|| self.corrupt("no MARK"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        let depth = items.iter().map(|s| s.depth).max();
        Ok((items.into_iter().map(|s| s.value).collect(), depth))
    }

    /// The top of the stack, to which a value of `depth` is being added.
    fn top_for(&mut self, depth: Option<usize>) -> Result<&mut Value, PickleError> {
        let pos = self.pos;
        let path = self.path.to_string();
        let top = self.stack.last_mut().ok_or(PickleError::Corrupt { path: path.clone(), reason: format!("empty stack (at byte {pos})") })?;
        if let Some(d) = depth {
            if d + 1 > MAX_PICKLE_DEPTH {
                return Err(PickleError::Limit { path, field: "nesting depth", reason: format!("values nest more than {MAX_PICKLE_DEPTH} deep (at byte {pos})") });
            }
            top.depth = top.depth.max(d + 1);
        }
        Ok(&mut top.value)
    }

    fn top_slot(&self) -> Result<&Slot, PickleError> {
        self.stack.last().ok_or_else(|| self.corrupt("empty stack"))
    }

    fn memo_put(&mut self, i: u32) -> Result<(), PickleError> {
        if self.memo.len() >= MAX_PICKLE_MEMO && !self.memo.contains_key(&i) {
            return Err(self.limit("memo", format!("more than {MAX_PICKLE_MEMO} memo entries")));
        }
        let top = self.top_slot()?.copy_cost();
        self.spend(top)?;
        let v = self.top_slot()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Result<(), PickleError> {
        let slot = self.memo.get(&i).ok_or_else(|| self.corrupt(format!("memo miss ({i})")))?.copy_cost();
        self.spend(slot)?;
        let v = self.memo[&i].clone();
        self.push_slot(v)
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
                b'.' => return Ok(self.pop()?.value), // STOP
                b'(' => self.push(Value::Mark, None)?,
                b'}' => self.push(Value::Dict(Vec::new()), None)?,
                b']' => self.push(Value::List(Vec::new()), None)?,
                b')' => self.push(Value::Tuple(Vec::new()), None)?,
                b'N' => self.push(Value::None, None)?,
                0x88 => self.push(Value::Bool(true), None)?,
                0x89 => self.push(Value::Bool(false), None)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v as i64), None)?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64), None)?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64), None)?
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
                    self.push(Value::Int(v), None)?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v), None)?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s), None)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s), None)?
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take_string(n)?).into_owned();
                    self.push(Value::Str(s), None)?
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take_string(n)?).into_owned();
                    self.push(Value::Str(s), None)?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take_string(n)?.to_vec();
                    self.push(Value::Bytes(b), None)?
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take_string(n)?.to_vec();
                    self.push(Value::Bytes(b), None)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(format!("{module}.{name}")), None)?
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(format!("{m}.{n}")), None)?,
                        _ => return Err(self.corrupt("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid.value)), Some(pid.depth))?
                }
                b't' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push(Value::Tuple(items), depth)?
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a.value]), Some(a.depth))?
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a.value, b.value]), Some(a.depth.max(b.depth)))?
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a.value, b.value, c.value]), Some(a.depth.max(b.depth).max(c.depth)))?
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top_for(Some(v.depth))? {
                        Value::List(l) => l.push(v.value),
                        _ => return Err(self.corrupt("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let (items, depth) = self.pop_mark()?;
                    match self.top_for(depth)? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.corrupt("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_for(Some(k.depth.max(v.depth)))? {
                        Value::Dict(d) => d.push((k.value, v.value)),
                        _ => return Err(self.corrupt("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let (items, depth) = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.corrupt("odd SETITEMS"));
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top_for(depth)? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err(self.corrupt("SETITEMS on a non-dict")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let depth = args.depth.max(callable.depth);
                    let v = self.reduce(callable.value, args.value)?;
                    self.push(v, Some(depth))?
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), kept inert.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let name = if let Value::Global(n) = cls.value { n } else { "?".into() };
                    let args_v = if let Value::Tuple(a) = args.value { a } else { vec![args.value] };
                    self.push(Value::Object(name, args_v), Some(args.depth))?
                }
                b'b' => {
                    // BUILD: state applied to an object. TorchScript modules
                    // keep it (their attributes); other states (an
                    // OrderedDict's _metadata, a parameter's flags) are dropped.
                    let state = self.pop()?;
                    let top = self.top_for(Some(state.depth))?;
                    if let Value::Object(class, _) = top {
                        *top = Value::Module { class: class.clone(), state: Box::new(state.value) };
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let top = self.top_slot()?.copy_cost();
                    self.spend(top)?;
                    let v = self.top_slot()?.clone();
                    self.push_slot(v)?
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
            other => return Ok(Value::Object(format!("({})", kind(&other)), vec![args])),
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
                let (dtype, key, numel) = match &storage {
                    Value::Tuple(t) if t.len() >= 3 => {
                        let dtype = match &t[1] {
                            Value::Global(g) => DType::from_storage(g.rsplit('.').next().unwrap_or(""))
                                .ok_or_else(|| PickleError::Unsupported { path: self.path.into(), reason: format!("storage type {g}") })?,
                            _ => return Err(self.corrupt("storage record without a type")),
                        };
                        let key = match &t[2] {
                            Value::Str(s) if s.len() <= MAX_NAME_BYTES => s.clone(),
                            _ => return Err(self.corrupt("storage record without a key")),
                        };
                        // ('storage', type, key, location, numel): numel is the storage's size in elements.
                        let numel = match t.get(4) {
                            Some(Value::Int(n)) => Some(*n),
                            _ => None,
                        };
                        (dtype, key, numel)
                    }
                    _ => return Err(self.corrupt("malformed storage record")),
                };
                let bad = |field: &'static str, reason: String| PickleError::BadTensor { path: self.path.into(), storage: key.clone(), field, reason };
                let ints = |v: Option<&Value>, field: &'static str| -> Result<Vec<usize>, PickleError> {
                    match v {
                        Some(Value::Tuple(items)) if items.len() <= MAX_TENSOR_RANK => items
                            .iter()
                            .map(|i| match i {
                                Value::Int(n) if *n >= 0 => usize::try_from(*n).map_err(|_| bad(field, format!("{n} does not fit this machine"))),
                                Value::Int(n) => Err(bad(field, format!("negative value {n}"))),
                                other => Err(bad(field, format!("a {} where an int belongs", kind(other)))),
                            })
                            .collect(),
                        Some(Value::Tuple(items)) => Err(bad(field, format!("{} dimensions; at most {MAX_TENSOR_RANK}", items.len()))),
                        _ => Err(bad(field, "not a tuple".into())),
                    }
                };
                let offset = match args.get(1) {
                    Some(Value::Int(n)) if *n >= 0 => usize::try_from(*n).map_err(|_| bad("storage_offset", format!("{n} does not fit this machine")))?,
                    _ => return Err(bad("storage_offset", "not a non-negative int".into())),
                };
                let t = TensorRef { storage: key.clone(), dtype, offset, shape: ints(args.get(2), "size")?, stride: ints(args.get(3), "stride")? };
                t.check().map_err(|(field, reason)| bad(field, reason))?;
                if let Some(numel) = numel {
                    let end = t.offset as u64 + t.numel() as u64; // both bounded by check()
                    if numel < 0 || (t.numel() > 0 && end > numel as u64) {
                        return Err(bad("storage_offset", format!("the view (offset {}, {} elements) does not fit its storage of {numel} elements", t.offset, t.numel())));
                    }
                }
                Ok(Value::Tensor(t))
            }
            "torch._utils._rebuild_parameter" => Ok(args.into_iter().next().unwrap_or(Value::None)),
            _ => Ok(Value::Object(name, args)),
        }
    }
}

impl Slot {
    /// What a deep copy of this slot costs against the budget (counted
    /// before the copy is made, so a huge copy is refused, not made).
    fn copy_cost(&self) -> usize {
        value_bytes(&self.value)
    }
}
