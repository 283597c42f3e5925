# Fixture of the moe-train refusals in bad_inputs.cmake: two copies of the good 2-rank checkpoint
# of tests/train. In ckpt_hostile the second shard of step 4 is replaced by a hostile safetensors
# file (overlapping tensors) and the index re-sealed, so only the shard's parser can refuse it;
# ckpt_copy stays intact. The files the refusals must not touch get an old mtime.
# cmake -DGOOD=... -DDIR=... -DTOOL=bad_input_tool -P bad_checkpoints.cmake
set(step step-00000004)
foreach(copy ckpt_hostile ckpt_copy)
  file(REMOVE_RECURSE ${DIR}/${copy})
  file(COPY ${GOOD}/ DESTINATION ${DIR}/${copy})
endforeach()
execute_process(COMMAND ${TOOL} plant-shard ${DIR}/ckpt_hostile/${step} model-00002-of-00002.safetensors
                        ${DIR}/overlapping_tensors.safetensors RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "plant-shard failed (${rc})")
endif()
foreach(copy ckpt_hostile ckpt_copy)
  foreach(file model-00002-of-00002.safetensors model.safetensors.index.json)
    execute_process(COMMAND ${TOOL} old-mtime ${DIR}/${copy}/${step}/${file} RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "old-mtime ${DIR}/${copy}/${step}/${file} failed (${rc})")
    endif()
  endforeach()
endforeach()
