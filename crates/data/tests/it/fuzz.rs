//! Malformed annotation files give an error, never a panic: valid COCO JSON, VOC XML and IDX
//! files mutated at random (fields replaced by values of other types or out of range, tags
//! duplicated, bytes changed, headers rewritten), then read.

use detnas_data::IdxDataset;
use detnas_data::det::{coco, voc};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;

fn coco_doc() -> Value {
    json!({
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 20}
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400},
            {"id": 11, "image_id": 2, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1}
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]
    })
}

/// Values a field may be replaced by: wrong types, negative, fractional, huge, non-finite.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!("text")),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(2.5)),
        Just(json!(1e300)),
        Just(json!(u64::MAX)),
        Just(json!(4_294_967_296u64)),
        Just(json!([])),
        Just(json!([1, 2])),
        Just(json!({})),
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>().prop_filter("JSON numbers are finite", |v| v.is_finite()).prop_map(|v| json!(v)),
    ]
}

/// A path into the document: (section, record, field).
fn coco_site() -> impl Strategy<Value = (&'static str, usize, &'static str)> {
    prop_oneof![
        (Just("images"), 0..2usize, prop_oneof![Just("id"), Just("file_name"), Just("width"), Just("height")]),
        (
            Just("annotations"),
            0..2usize,
            prop_oneof![Just("id"), Just("image_id"), Just("category_id"), Just("bbox"), Just("iscrowd"), Just("area")]
        ),
        (Just("categories"), 0..2usize, prop_oneof![Just("id"), Just("name")]),
    ]
}

fn voc_xml(objects: usize) -> String {
    let obj = "<object><name>dog</name><difficult>0</difficult>\
               <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>";
    format!(
        "<annotation><filename>x.jpg</filename><size><width>100</width><height>80</height><depth>3</depth></size>{}</annotation>",
        obj.repeat(objects)
    )
}

fn write_idx(dir: &Path, name: &str, dims: &[u32], payload: usize) -> std::path::PathBuf {
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend(std::iter::repeat_n(7u8, payload));
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn coco_fields_of_the_wrong_kind_are_errors((section, record, field) in coco_site(), value in odd_value()) {
        let mut doc = coco_doc();
        doc[section][record][field] = value.clone();
        let r = coco::parse(&doc, Path::new("fuzz.json"), Path::new("images"));
        // The width/height of an image must be a positive u32, an id a non-negative integer.
        let size_like = section == "images" && (field == "width" || field == "height");
        let valid_size = value.as_u64().is_some_and(|v| v >= 1 && v <= u32::MAX as u64);
        if size_like && !valid_size {
            prop_assert!(r.is_err(), "{section}[{record}].{field} = {value} was accepted");
        }
        if let Err(e) = r {
            prop_assert!(e.to_string().contains("fuzz.json"), "the error names the file: {e}");
        }
    }

    #[test]
    fn coco_removed_fields_never_panic((section, record, field) in coco_site()) {
        let mut doc = coco_doc();
        doc[section][record].as_object_mut().unwrap().remove(field);
        let _ = coco::parse(&doc, Path::new("fuzz.json"), Path::new("images"));
    }

    #[test]
    fn voc_mutated_xml_never_panics(objects in 0..3usize, at in 0..400usize, byte in any::<u8>(), cut in 0..400usize) {
        let xml = voc_xml(objects);
        let mut bytes = xml.clone().into_bytes();
        let at = at % bytes.len();
        bytes[at] = byte;
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        let _ = voc::parse_xml(&mutated, Path::new("fuzz.xml"));
        let cut = cut % xml.len();
        if cut < xml.len() - "</annotation>".len() {
            prop_assert!(voc::parse_xml(&xml[..cut], Path::new("fuzz.xml")).is_err(), "a document cut at {cut} was accepted");
        }
    }

    #[test]
    fn voc_nested_and_stray_tags_are_errors(objects in 1..3usize, which in 0..4usize) {
        let xml = voc_xml(objects);
        let mutated = match which {
            0 => xml.replacen("<object>", "<object><object>", 1),
            1 => xml.replacen("</object>", "</object></object>", 1),
            2 => xml.replacen("<width>100</width>", "<width>-4</width>", 1),
            _ => xml.replacen("<height>80</height>", "<height>1e12</height>", 1),
        };
        let r = voc::parse_xml(&mutated, Path::new("fuzz.xml"));
        prop_assert!(r.is_err(), "accepted: {mutated}");
        prop_assert!(r.unwrap_err().to_string().contains("fuzz.xml"));
    }

    #[test]
    fn idx_headers_that_do_not_match_the_payload_are_errors(
        dims in proptest::collection::vec(any::<u32>(), 3),
        small in proptest::collection::vec(0u32..4, 3),
        payload in 0usize..64,
        big in any::<bool>(),
    ) {
        let dir = std::env::temp_dir().join(format!("detnas-fuzz-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dims = if big { dims } else { small };
        let images = write_idx(&dir, "images", &dims, payload);
        let labels = write_idx(&dir, "labels", &[dims[0]], dims[0].min(64) as usize);
        let product: u128 = dims.iter().map(|&d| d as u128).product();
        let r = IdxDataset::open(&images, &labels);
        if product != payload as u128 || dims[0] as usize > 64 {
            prop_assert!(r.is_err(), "{dims:?} with {payload} payload bytes was accepted");
        }
    }
}
