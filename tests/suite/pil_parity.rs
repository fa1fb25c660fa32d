//! Each op against PIL's own output (Pillow 13), byte for byte. The expected arrays come from
//! `tools/pil_reference.py` and are committed in `tests/data/pil_ops.json`.

use cifar_stream::augment::ops::{self, color};
use cifar_stream::store::Shape;
use serde_json::Value;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_op_matches_pil_byte_for_byte() {
    let data: Value = serde_json::from_str(include_str!("data/pil_ops.json")).unwrap();
    let shape = Shape {
        width: data["width"].as_u64().unwrap() as u32,
        height: data["height"].as_u64().unwrap() as u32,
        channels: 3,
    };
    let fill: Vec<u8> = data["fill"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let mut failures = Vec::new();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() > 80);
    for case in cases {
        let src = unhex(
            data["inputs"][case["input"].as_str().unwrap()]
                .as_str()
                .unwrap(),
        );
        let want = unhex(case["output"].as_str().unwrap());
        let op = case["op"].as_str().unwrap();
        let arg = case["args"].get(0).and_then(Value::as_f64).unwrap_or(0.0);
        let mut got = src.clone();
        let mut dst = vec![0u8; src.len()];
        match op {
            "rotate" => ops::rotate(&src, &mut got, shape, arg, &fill),
            "shear_x" => ops::shear_x(&src, &mut got, shape, arg, &fill),
            "shear_y" => ops::shear_y(&src, &mut got, shape, arg, &fill),
            "translate_x" => ops::translate_x(&src, &mut got, shape, arg, &fill),
            "translate_y" => ops::translate_y(&src, &mut got, shape, arg, &fill),
            "autocontrast" => ops::autocontrast(&mut got, shape),
            "equalize" => ops::equalize(&mut got, shape),
            "invert" => ops::invert(&mut got),
            "posterize" => ops::posterize(&mut got, arg as u32),
            "solarize" => ops::solarize(&mut got, arg as u32),
            "brightness" => ops::brightness(&mut got, arg as f32),
            "color" => color::color(&mut got, shape, arg as f32),
            "contrast" => ops::contrast(&mut got, shape, arg as f32),
            "sharpness" => {
                ops::sharpness(&src, &mut dst, shape, arg as f32);
                got.copy_from_slice(&dst);
            }
            other => panic!("unknown op {other}"),
        }
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if differ > 0 {
            failures.push(format!(
                "{op}({arg}) on {}: {differ} bytes differ",
                case["input"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
