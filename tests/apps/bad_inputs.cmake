# The bad input battery (included by tests/apps/CMakeLists.txt): every program against missing,
# truncated, hostile and inconsistent files and bad options. Each test runs the program under
# mpirun and requires (expect_error.cmake) a non-zero exit within the timeout, the same message
# from every rank, and the user's files it names unchanged. README.md "Reliability: faults and bad
# inputs" lists what each gives.
find_package(ZLIB REQUIRED)  # the tool re-seals checkpoint indexes (CRC-32)
add_executable(bad_input_tool bad_input_tool.cpp)
target_link_libraries(bad_input_tool PRIVATE moe_test_support ZLIB::ZLIB moe::warnings)

set(bad_dir ${CMAKE_CURRENT_BINARY_DIR}/bad_inputs)
add_test(NAME bad_inputs_make COMMAND bad_input_tool make-bad-files ${bad_dir})
set_tests_properties(bad_inputs_make PROPERTIES FIXTURES_SETUP bad_inputs)

# moe_add_error_test(NAME RANKS np MESSAGE text COMMAND program args... [UNCHANGED files...]
#                    [FIXTURES names...])
function(moe_add_error_test name)
  cmake_parse_arguments(ARG "" "RANKS;MESSAGE" "COMMAND;UNCHANGED;FIXTURES" ${ARGN})
  add_test(NAME ${name}
    COMMAND ${CMAKE_COMMAND} "-DCOMMAND=${MPIEXEC_EXECUTABLE};-np;${ARG_RANKS};${ARG_COMMAND}"
            -DNP=${ARG_RANKS} "-DMESSAGE=${ARG_MESSAGE}" "-DFILE_UNCHANGED=${ARG_UNCHANGED}"
            -P ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.cmake)
  set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED "bad_inputs;${ARG_FIXTURES}"
    ENVIRONMENT "${MOE_MPI_TEST_ENV}" TIMEOUT 90 PROCESSORS ${ARG_RANKS} LABELS "mpi;app;errors")
endfunction()

# --- moe-replay: hostile case files (name|message). Every run writes --out over a file that must
# keep its bytes and mtime.
set(out ${bad_dir}/existing_out.safetensors)
set(replay_files
  "empty|file is 0 bytes, shorter than the 8-byte header length field"
  "truncated_header|header length 3088 is larger than the 192 bytes that follow the length field"
  "truncated_data|end is beyond the data section of 21528 bytes"
  "huge_header_length|header length 9223372036854775808 is larger than the 25616 bytes"
  "garbled_header|header is not valid JSON: [json.exception.parse_error.101]"
  "offsets_past_end|tensor 'input': data_offsets [19648, 26624] end is beyond the data section"
  "overlapping_tensors|tensors 'experts.7.w2.weight' [15424, 16384] and 'gate.weight' [16380, 16764] overlap"
  "unknown_dtype|tensor 'input' has an unsupported dtype \"BOOL\""
  "shape_size_mismatch|hold 2880 bytes, but shape [59, 12] of F32 needs 2832"
  "non_utf8_header|header is not valid UTF-8"
  "deeply_nested_json|header JSON is nested deeper than"
  "nul_padded_header|header is not valid JSON: NUL byte"
  "metadata_not_string|__metadata__ is not a string-to-string object: the value of 'top_k' is 2"
  "wrong_dtype|tensor 'input' has dtype F64, expected F32"
  "rows_not_tokens|tensor 'input' has shape [59, 12], expected [60, 12]"
  "missing_tokens|metadata 'tokens_per_rank' is missing"
  "empty_tokens_entry|tokens_per_rank entry: '' is not an integer"
  "overflowing_tokens|tokens_per_rank sums to more than 2^63-1 tokens"
  "negative_top_k|top_k=-1 is outside 1..num_experts (8)"
  "negative_min_capacity|min_capacity=-2 must be at least 0"
  "negative_aux_loss|aux_loss_coef=-0.5 must be finite and >= 0"
  "nan_capacity|capacity_factor: 'nan' is not a finite number"
  "non_numeric_min_capacity|min_capacity: '4x' is not an integer"
  "bad_bool|normalize_topk: 'yes' is not true or false"
  "bad_activation|activation 'tanh' is not one of: gelu, gelu_tanh, relu, silu, swiglu"
  "unknown_key|metadata key 'expert_bias' is not an option of this layer (known: top_k, capacity_factor"
  "bad_gate|gate 'tanh' is not one of: softmax, sigmoid"
  "n_group_not_divisor|n_group=3 does not divide num_experts (8)"
  "topk_group_zero|topk_group=0 is outside 1..n_group (1)"
  "topk_group_too_many|topk_group=2 is outside 1..n_group (1)"
  "zero_scaling|routed_scaling_factor=0 must be finite and > 0"
  "bad_scope|capacity_scope 'node' is not one of: rank, global"
  "bias_rate_with_softmax|bias_update_rate=0.01 needs gate=sigmoid"
  "bias_with_softmax|tensor 'gate.e_score_correction_bias' is not a parameter of this layer (gate softmax"
  "bias_wrong_shape|tensor 'gate.e_score_correction_bias' has shape [7], expected [8]"
  "shared_expert_incomplete|tensor 'shared_expert.w1.bias' is missing")
# All at 2 ranks; the container's worst cases also at 1 and 4 (the files hold a 2-rank case, but
# these errors come before the rank count is compared).
set(also_at_1_and_4 huge_header_length deeply_nested_json overlapping_tensors overflowing_tokens)
foreach(entry IN LISTS replay_files)
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 message)
  set(rank_counts 2)
  if(name IN_LIST also_at_1_and_4)
    set(rank_counts 1 2 4)
  endif()
  foreach(np IN LISTS rank_counts)
    moe_add_error_test(bad_replay_${name}_np${np} RANKS ${np} MESSAGE "${message}"
      COMMAND $<TARGET_FILE:moe-replay> --case ${bad_dir}/${name}.safetensors --out ${out}
      UNCHANGED ${out})
  endforeach()
endforeach()

# --- moe-replay: paths and options (name|arguments|message); existing_out.safetensors is a valid
# 2-rank case.
set(case ${bad_dir}/existing_out.safetensors)
set(replay_args
  "case_is_directory|--case,${bad_dir},--out,${out}|${bad_dir}: not a regular file"
  "out_in_missing_directory|--case,${case},--out,${bad_dir}/no/such/dir/out.safetensors|cannot create temporary file"
  "out_is_directory|--case,${case},--out,${bad_dir}|cannot write (rename): Is a directory"
  "no_out|--case,${case}|the option '--out' is required but missing"
  "dp_size_zero|--case,${case},--out,${out},--dp-size,0|--dp-size must be >= 1"
  "dp_size_not_numeric|--case,${case},--out,${out},--dp-size,abc|the argument ('abc') for option '--dp-size' is invalid"
  "dp_size_mismatch|--case,${case},--out,${out},--dp-size,3|run it with mpirun -np 6 (entries x dp-size)")
foreach(entry IN LISTS replay_args)
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 args)
  list(GET parts 2 message)
  string(REPLACE "," ";" args "${args}")
  moe_add_error_test(bad_replay_${name}_np2 RANKS 2 MESSAGE "${message}"
    COMMAND $<TARGET_FILE:moe-replay> ${args} UNCHANGED ${out})
endforeach()

# --- moe-bench: it reads no file; bad options and values (name|ranks|arguments|message).
set(bench_args
  "unknown_option|2|--frobnicate|unrecognised option '--frobnicate'"
  "missing_value|2|--experts|the required argument for option '--experts' is missing"
  "not_numeric|2|--experts,abc|--experts: 'abc' is not an integer"
  "negative_tokens|2|--tokens,-5|--tokens must be >= 0"
  "zero_iters|1|--iters,0|--iters must be >= 1"
  "negative_d_model|2|--d-model,-1|d_model=-1 must be at least 1"
  "top_k_zero|2|--top-k,0|top_k=0 is outside 1..num_experts (8)"
  "nan_capacity|2|--capacity-factor,nan|--capacity-factor: 'nan' is not a finite number"
  "n_group_not_divisor|4|--experts,6,--n-group,4,--tokens,8|n_group=4 does not divide num_experts (6)"
  "bad_gate|2|--gate,tanh|--gate 'tanh' is not one of: softmax, sigmoid"
  "bias_rate_with_softmax|2|--bias-update-rate,0.1|bias_update_rate=0.1 needs gate=sigmoid"
  "unknown_activation|2|--activation,tanh|--activation 'tanh' is not one of"
  "unknown_routing|2|--routing,uniform|--routing 'uniform': unknown distribution"
  "routing_too_narrow|2|--routing,balanced,--experts,16,--d-model,8|forced routing needs d_model (8) >= experts (16)"
  "ranks_per_node_not_divisor|4|--ranks-per-node,3,--tokens,8|ranks_per_node=3 does not divide the 4 ranks"
  "negative_ranks_per_node|2|--ranks-per-node,-1|ranks_per_node=-1 must be at least 0"
  "hierarchical_chunks|2|--exchange,hierarchical,--overlap-chunks,2|exchange=hierarchical runs the whole pass as one chunk: set overlap_chunks=1 (it is 2)"
  "hierarchical_bf16|2|--exchange,hierarchical,--wire,bf16|exchange=hierarchical sends fp32 rows")
foreach(entry IN LISTS bench_args)
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 np)
  list(GET parts 2 args)
  list(GET parts 3 message)
  string(REPLACE "," ";" args "${args}")
  moe_add_error_test(bad_bench_${name}_np${np} RANKS ${np} MESSAGE "${message}"
    COMMAND $<TARGET_FILE:moe-bench> ${args})
endforeach()

# --- moe-train: options, and checkpoints the refusals in tests/train do not cover: none at all, a
# shard whose damage gets past the checksums (index re-sealed), and a refused resume that also
# names the checkpoint as --save. Each also passes --json over an existing log, which must survive.
set(train_ckpt ${PROJECT_BINARY_DIR}/tests/train/checkpoints/good)
add_test(NAME bad_inputs_make_checkpoints
  COMMAND ${CMAKE_COMMAND} -DGOOD=${train_ckpt} -DDIR=${bad_dir} -DTOOL=$<TARGET_FILE:bad_input_tool>
          -P ${CMAKE_CURRENT_SOURCE_DIR}/bad_checkpoints.cmake)
set_tests_properties(bad_inputs_make_checkpoints PROPERTIES
  FIXTURES_REQUIRED "bad_inputs;train_checkpoints" FIXTURES_SETUP bad_checkpoints)
set(step4 step-00000004)
set(shard2 ${step4}/model-00002-of-00002.safetensors)
set(index ${step4}/model.safetensors.index.json)
set(log ${bad_dir}/existing.jsonl)
# The refusals come before any step; one that went missing would run into expect_error's timeout.
set(train_small --eval-tokens 256 --baseline none)
set(as_saved --steps,6,--batch,256)  # the checkpoint's options, so that only its damage is refused
set(train_args
  "unknown_option|2|--frobnicate|unrecognised option '--frobnicate'"
  "negative_steps|2|--steps,-1|--steps must be >= 0"
  "not_numeric|1|--layers,abc|the argument ('abc') for option '--layers' is invalid"
  "nan_noise|2|--noise,nan|--noise must be >= 0"
  "batch_not_multiple|2|--batch,3|--batch 3 is not a multiple of the 2 ranks"
  "ep_size_not_divisor|2|--ep-size,3|does not split into expert-parallel groups of 3"
  "json_unwritable|2|--json,${bad_dir}/no/such/dir/log.jsonl|--json: cannot write"
  "resume_nothing|2|--resume,${bad_dir}/no_such_checkpoint|no checkpoint in ${bad_dir}/no_such_checkpoint"
  "resume_hostile_shard|2|${as_saved},--resume,${bad_dir}/ckpt_hostile|and 'gate.weight' [16380, 16764] overlap"
  "resume_hostile_shard|4|${as_saved},--resume,${bad_dir}/ckpt_hostile,--ep-size,4|and 'gate.weight' [16380, 16764] overlap"
  "resume_other_options_with_save|2|${as_saved},--resume,${bad_dir}/ckpt_copy,--save,${bad_dir}/ckpt_copy,--d-model,32|(d_model 64 in the checkpoint, 32 now)")
foreach(entry IN LISTS train_args)
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 np)
  list(GET parts 2 args)
  list(GET parts 3 message)
  string(REPLACE "," ";" args "${args}")
  if(NOT "--json" IN_LIST args)
    list(APPEND args --json ${log})
  endif()
  moe_add_error_test(bad_train_${name}_np${np} RANKS ${np} MESSAGE "${message}"
    COMMAND $<TARGET_FILE:moe-train> ${train_small} ${args}
    UNCHANGED ${log} ${bad_dir}/ckpt_hostile/${shard2} ${bad_dir}/ckpt_hostile/${index}
              ${bad_dir}/ckpt_copy/${shard2} ${bad_dir}/ckpt_copy/${index}
    FIXTURES bad_checkpoints)
endforeach()
