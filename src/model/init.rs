//! Initial weights that depend on nothing but the seed: a [`VarBuilder`](candle_nn::VarBuilder)
//! backend that creates each variable from the distribution its layer hints at, drawn from a
//! generator seeded by `(seed, hash(variable name))`, and keeps it in a [`VarMap`].
//!
//! candle's own initialisers draw from a process-wide generator, so two builds of one model
//! would differ; here the same seed gives the same weights whatever was built before.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarMap};

use crate::seed;

/// Creates variables in a [`VarMap`] with seeded initial values.
pub struct SeededInit {
    seed: u64,
    vars: VarMap,
}

impl SeededInit {
    /// Variables of `vars`, drawn from `seed`.
    pub fn new(seed: u64, vars: VarMap) -> SeededInit {
        SeededInit { seed, vars }
    }

    /// The initial values of variable `name` of `shape` under `hint`, in f32.
    fn values(&self, name: &str, shape: &Shape, hint: Init) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        let mut rng = seed::rng(self.seed, &[xxhash_rust::xxh3::xxh3_64(name.as_bytes())]);
        Ok(match hint {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => {
                let (half, mid) = ((up - lo) / 2.0, (up + lo) / 2.0);
                (0..n)
                    .map(|_| ((rng.f64() * 2.0 - 1.0) * half + mid) as f32)
                    .collect()
            }
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (normal(&mut rng) * stdev + mean) as f32)
                .collect(),
            Init::Kaiming { .. } => candle_core::bail!(
                "{name}: give the layer's Kaiming standard deviation as Init::Randn"
            ),
        })
    }
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut vars = self.vars.data().lock().expect("variable map lock");
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("{name}: shape {shape:?}, created as {:?}", var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self.values(name, &shape, hint)?;
        let t = Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a variable is created with its shape and initial values")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .data()
            .lock()
            .expect("variable map lock")
            .contains_key(name)
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
