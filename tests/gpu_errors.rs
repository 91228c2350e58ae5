//! A device that fails stops the engine with a plain error instead of a panic (wgpu's
//! default) or a hang: an uncaptured validation error and a lost device both surface from
//! the next readback, and the page shows that message while the saved checkpoint stays.

use edge_llm::kernels::GpuContext;

fn buffer(ctx: &GpuContext, size: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test"),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

#[test]
fn an_uncaptured_error_becomes_the_next_readbacks_error() {
    let ctx = GpuContext::new_blocking(None).unwrap();
    let ok = buffer(&ctx, 16);
    assert_eq!(
        pollster::block_on(ctx.read_buffer(&ok)).unwrap(),
        vec![0u8; 16]
    );
    assert!(ctx.failure().is_none());
    // Over the device's max_buffer_size: a validation error outside any error scope.
    let _too_big = buffer(&ctx, ctx.limits.max_buffer_size + 4);
    let err = pollster::block_on(ctx.read_buffer(&ok))
        .unwrap_err()
        .to_string();
    assert!(err.contains("validation error"), "{err}");
    assert!(ctx.check().is_err());
}

#[test]
fn a_lost_device_gives_a_plain_error() {
    let ctx = GpuContext::new_blocking(None).unwrap();
    let b = buffer(&ctx, 16);
    ctx.device.destroy();
    let err = pollster::block_on(ctx.read_buffer(&b))
        .unwrap_err()
        .to_string();
    assert!(err.contains("GPU device was lost"), "{err}");
    assert!(err.contains("destroyed"), "{err}");
}
