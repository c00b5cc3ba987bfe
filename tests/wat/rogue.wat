;; A misbehaving guest with the shipped guest's exports (realm_alloc, realm_free,
;; realm_generate), for the limit and cleanup tests. realm_generate reads the model's
;; info, opens KV rings, runs 4 tokens through every layer, calls realm_emit once (so
;; the host sees the guest mid-generation), then misbehaves as the prompt's first byte
;; says:
;;   's'  spins forever (a runaway guest)
;;   't'  traps (unreachable) holding two KV rings of 4096 positions
;;   'g'  grows its memory a page at a time until refused, then asks for 4 GiB and for
;;        0xFFFFFFFF pages; returns its size in pages (-1 if a huge grow succeeded)
;; and returns 0 for any other byte. Memory is imported (4 pages) so both engines cap it.
(module
  (import "env" "memory" (memory 4))
  (import "env" "realm_model_info" (func $model_info (param i32 i32 i32) (result i32)))
  (import "env" "realm_kv_create" (func $kv_create (param i32 i32) (result i64)))
  (import "env" "realm_forward_embedding" (func $embedding (param i32 i32 i32 i32) (result i32)))
  (import "env" "realm_forward_layers" (func $layers (param i32 i32 i32 i32 i32 i32 i64 i32) (result i32)))
  (import "env" "realm_emit" (func $emit (param i32 i32) (result i32)))

  (data (i32.const 0x80) "rogue")

  ;; a bump allocator over [0x8000, 0x30000); realm_free is a no-op
  (global $heap (mut i32) (i32.const 0x8000))
  (func (export "realm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const 0x30000))
      (then (global.set $heap (i32.const 0x8000))))
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "realm_free") (param i32))

  (func (export "realm_generate")
    (param $model i32) (param $prompt i32) (param $prompt_len i32) (param $params i32) (param $params_len i32)
    (result i32)
    (local $mode i32) (local $r i32) (local $n_embd i32) (local $n_layer i32) (local $kv i64) (local $n_ctx i32)
    (local.set $mode (if (result i32) (local.get $prompt_len)
      (then (i32.load8_u (local.get $prompt))) (else (i32.const 0))))
    ;; realm_model_info at 0x100: n_embd is field 3, n_layer field 4
    (local.set $r (call $model_info (local.get $model) (i32.const 0x100) (i32.const 48)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (local.get $r))))
    (local.set $n_embd (i32.load (i32.const 0x10c)))
    (local.set $n_layer (i32.load (i32.const 0x110)))
    (local.set $n_ctx (select (i32.const 4096) (i32.const 64) (i32.eq (local.get $mode) (i32.const 0x74))))
    ;; two rings (only the second is used)
    (local.set $kv (call $kv_create (local.get $model) (local.get $n_ctx)))
    (if (i64.lt_s (local.get $kv) (i64.const 0)) (then (return (i32.wrap_i64 (local.get $kv)))))
    (local.set $kv (call $kv_create (local.get $model) (local.get $n_ctx)))
    (if (i64.lt_s (local.get $kv) (i64.const 0)) (then (return (i32.wrap_i64 (local.get $kv)))))
    ;; tokens 5, 6, 7, 8 at 0x200 through the embedding and every layer, hidden states at 0x1000
    (i32.store (i32.const 0x200) (i32.const 5))
    (i32.store (i32.const 0x204) (i32.const 6))
    (i32.store (i32.const 0x208) (i32.const 7))
    (i32.store (i32.const 0x20c) (i32.const 8))
    (local.set $r (call $embedding (local.get $model) (i32.const 0x200) (i32.const 4) (i32.const 0x1000)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (local.get $r))))
    (local.set $r (call $layers (local.get $model) (i32.const 0) (local.get $n_layer) (i32.const 0x1000)
                                (i32.mul (local.get $n_embd) (i32.const 4)) (i32.const 0) (local.get $kv)
                                (i32.const 0x1000)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (local.get $r))))
    (drop (call $emit (i32.const 0x80) (i32.const 5)))

    (if (i32.eq (local.get $mode) (i32.const 0x73))  ;; 's'
      (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $mode) (i32.const 0x74))  ;; 't'
      (then unreachable))
    (if (i32.eq (local.get $mode) (i32.const 0x67))  ;; 'g'
      (then
        (loop $more
          (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        (if (i32.ne (memory.grow (i32.const 0x10000)) (i32.const -1)) (then (return (i32.const -1))))
        (if (i32.ne (memory.grow (i32.const -1)) (i32.const -1)) (then (return (i32.const -1))))
        ;; the last byte of the memory it has is its own
        (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 0x10000)) (i32.const 1)) (i32.const 0x5a))
        (return (memory.size))))
    (i32.const 0))
)
