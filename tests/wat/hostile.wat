;; A hostile tenant's guest for the server tests (tests/serve): it has the shipped
;; guest's realm_alloc / realm_free / realm_generate (no tokenizer, no chat) and
;; misbehaves as the prompt's first byte says:
;;   'p'  calls imports with out-of-range pointers and lengths (embedding input past the
;;        end of memory, an LM head output at 0xFFFF0000, an emit of 4 KiB from
;;        0xFFFFFF00) and a KV id it does not own; traps if any of them succeeded,
;;        else returns the embedding's error code
;;   's'  emits "hostile" then spins forever (until its time limit)
;; and for any other byte emits "ok" and returns 1. Memory is imported (2 pages).
(module
  (import "env" "memory" (memory 2))
  (import "env" "realm_forward_embedding" (func $embedding (param i32 i32 i32 i32) (result i32)))
  (import "env" "realm_forward_lm_head" (func $lm_head (param i32 i32 i32 i32) (result i32)))
  (import "env" "realm_kv_free" (func $kv_free (param i64) (result i32)))
  (import "env" "realm_emit" (func $emit (param i32 i32) (result i32)))

  (data (i32.const 0x80) "hostile")
  (data (i32.const 0x90) "ok")

  ;; a bump allocator over [0x1000, 0x18000)
  (global $heap (mut i32) (i32.const 0x1000))
  (func (export "realm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const 0x18000))
      (then (global.set $heap (i32.const 0x1000))))
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "realm_free") (param i32))

  (func (export "realm_generate")
    (param $model i32) (param $prompt i32) (param $prompt_len i32) (param $params i32) (param $params_len i32)
    (result i32)
    (local $mode i32) (local $r i32)
    (local.set $mode (if (result i32) (local.get $prompt_len)
      (then (i32.load8_u (local.get $prompt))) (else (i32.const 0))))
    (if (i32.eq (local.get $mode) (i32.const 0x70))  ;; 'p'
      (then
        (if (i32.ge_s (call $lm_head (local.get $model) (i32.const 0x100) (i32.const 0x7FFFFFFF)
                                     (i32.const 0xFFFF0000)) (i32.const 0))
          (then unreachable))
        (if (i32.ge_s (call $emit (i32.const 0xFFFFFF00) (i32.const 0x1000)) (i32.const 0))
          (then unreachable))
        (if (i32.ge_s (call $kv_free (i64.const 0x1234)) (i32.const 0))
          (then unreachable))
        (local.set $r (call $embedding (local.get $model) (i32.const 0xFFFFFFF0) (i32.const 4) (i32.const 0x100)))
        (if (i32.ge_s (local.get $r) (i32.const 0)) (then unreachable))
        (return (local.get $r))))
    (if (i32.eq (local.get $mode) (i32.const 0x73))  ;; 's'
      (then
        (drop (call $emit (i32.const 0x80) (i32.const 7)))
        (loop $forever (br $forever))))
    (drop (call $emit (i32.const 0x90) (i32.const 2)))
    (i32.const 1))
)
