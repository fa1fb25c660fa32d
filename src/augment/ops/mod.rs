//! Image operations: small pure functions on HWC `u8` images, magnitude as a parameter.

pub mod color;
pub mod cutout;
pub mod geometric;

pub use color::{
    autocontrast, brightness, color, contrast, equalize, invert, posterize, sharpness, solarize,
};
pub use cutout::Rect;
pub use geometric::{hflip, pad_crop, rotate, shear_x, shear_y, translate_x, translate_y, PadFill};
