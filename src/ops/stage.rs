//! Host values written into a tensor that stays put (the trainer's fixed input buffers): one
//! copy into its storage, on CUDA on the device's stream, rather than a new tensor uploaded and
//! then copied into the buffer (a second copy, and on CUDA a fresh allocation per batch).

use candle_core::{CpuStorage, Result, Storage, Tensor, WithDType};

/// An element type a buffer can be staged in.
pub trait Staged: WithDType {
    /// The CPU storage's values, if they are of this type.
    fn cpu(s: &mut CpuStorage) -> Option<&mut [Self]>;

    /// Copies `values` into elements `start..start + values.len()` of a CUDA storage.
    #[cfg(feature = "cuda")]
    fn cuda(s: &mut candle_core::CudaStorage, start: usize, values: &[Self]) -> Result<()>;
}

macro_rules! staged {
    ($t:ty, $variant:ident) => {
        impl Staged for $t {
            fn cpu(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }

            #[cfg(feature = "cuda")]
            fn cuda(s: &mut candle_core::CudaStorage, start: usize, values: &[Self]) -> Result<()> {
                use candle_core::cuda_backend::WrapErr;
                let stream = s.device.cuda_stream();
                let slice = s.as_cuda_slice_mut::<$t>()?;
                let mut dst = slice.slice_mut(start..start + values.len());
                stream.memcpy_htod(values, &mut dst).w()
            }
        }
    };
}

staged!(f32, F32);
staged!(u32, U32);

/// Writes `values` into `buffer` (contiguous, of `values`' length and type) in place.
pub fn write_into<T: Staged>(buffer: &Tensor, values: &[T]) -> Result<()> {
    if buffer.dtype() != T::DTYPE || buffer.elem_count() != values.len() {
        candle_core::bail!(
            "staging {} {:?} values into a {:?} buffer of {:?}",
            values.len(),
            T::DTYPE,
            buffer.dtype(),
            buffer.shape()
        );
    }
    candle_core::foreach::inplace("stage", &[], &[buffer], &[], |w, _| {
        let (storage, layout) = &mut w[0];
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("staging into a non-contiguous buffer");
        };
        match &mut **storage {
            Storage::Cpu(cpu) => match T::cpu(cpu) {
                Some(dst) => dst[start..end].copy_from_slice(values),
                None => candle_core::bail!("staging into a buffer of another type"),
            },
            #[cfg(feature = "cuda")]
            Storage::Cuda(cuda) => T::cuda(cuda, start, values)?,
            _ => candle_core::bail!("staging into a buffer on an unsupported device"),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn writes_in_place_and_refuses_a_wrong_length_or_type() {
        let buffer = Var::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = buffer.as_tensor();
        write_into(t, &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(write_into(t, &[1.0f32]).is_err());
        assert!(write_into(t, &[1u32, 2, 3, 4]).is_err());
        let labels = Var::zeros(2, candle_core::DType::U32, &Device::Cpu).unwrap();
        write_into(labels.as_tensor(), &[7u32, 9]).unwrap();
        assert_eq!(labels.as_tensor().to_vec1::<u32>().unwrap(), [7, 9]);
    }
}
