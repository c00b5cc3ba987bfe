;; A guest that floods the host's stream: its realm_generate emits the first 64 KiB of
;; its memory, again and again, until realm_emit says stop; it returns the count.
;; Memory is imported (4 pages) so both engines cap it.
(module
  (import "env" "memory" (memory 4))
  (import "env" "realm_emit" (func $emit (param i32 i32) (result i32)))

  ;; a bump allocator from 0x20000 (what the host puts: the prompt and the params)
  (global $heap (mut i32) (i32.const 0x20000))
  (func (export "realm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "realm_free") (param i32))

  (func (export "realm_generate") (param i32 i32 i32 i32 i32) (result i32)
    (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.lt_s (call $emit (i32.const 0) (i32.const 65536)) (i32.const 0)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n)))
