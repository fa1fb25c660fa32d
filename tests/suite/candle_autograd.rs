//! candle's own gradient tests, run against the vendored candle-core whose backward pass
//! `tools/patch_candle_backprop.py` changes (see `vendor/README.md`), plus the cases the patch
//! touches: a first gradient stored as is, a second one added, a strided one made contiguous.
#![allow(unexpected_cfgs)]

use candle_core::{Device, Tensor, Var};

#[path = "../../vendor/candle-core/tests/grad_tests.rs"]
mod grad_tests;

#[test]
fn a_tensor_used_twice_gets_the_sum_of_both_gradients() -> candle_core::Result<()> {
    let x = Var::new(&[1f32, -2., 3.], &Device::Cpu)?;
    // y = sum(3x) + sum(x * x): dy/dx = 3 + 2x.
    let y = ((x.as_tensor() * 3.)?.sum_all()? + x.as_tensor().sqr()?.sum_all()?)?;
    let grads = y.backward()?;
    assert_eq!(grads.get(&x).unwrap().to_vec1::<f32>()?, [5., -1., 9.]);
    Ok(())
}

#[test]
fn a_strided_first_gradient_is_stored_contiguous() -> candle_core::Result<()> {
    let x = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?;
    let w = Tensor::new(&[[1f32, 0.], [0., 2.], [1., 1.]], &Device::Cpu)?;
    // The transpose's backward hands x a transposed (strided) view of the matmul's gradient.
    let y = x
        .as_tensor()
        .t()?
        .contiguous()?
        .t()?
        .matmul(&w)?
        .sum_all()?;
    let grads = y.backward()?;
    let g = grads.get(&x).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(g.to_vec2::<f32>()?, [[1., 2., 2.], [1., 2., 2.]]);
    Ok(())
}
